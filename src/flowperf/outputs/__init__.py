"""What a person reads: terminal and HTML reports, plots, comparisons of runs."""
