"""`tl check`: what is wrong with a dataset (duplicates, leakage, label errors, outliers, balance)."""
