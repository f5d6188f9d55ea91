"""What a workflow shows and leaves: number formatting, terminal tables, figures, compare.csv/json,
report.md, a search's files, the live progress."""
