"""pgtide's benchmarks: ``make bench`` runs every suite in one go and writes a report."""
