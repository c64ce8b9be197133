"""`tl check`: what is wrong with a dataset (duplicates, leakage, label errors, outliers, balance)."""

# Kept here, in a module without numpy, because the CLI's option defaults read it at start-up.
# Calibrated on real photos with the default backbone (README, "tl check"; benchmarks/check_calibrate.py):
# at 0.90, 100 % of 90 %-resized+q70, q50, 10 %-cropped and flipped copies reach it, 98 % of 10-degree
# rotations, 90 % of x1.3 brightened and 80 % of 10 %-shifted copies; of distinct photos of the
# same class, 0 % of catsdogs (600 photos) and 4.8 % of the blurry 128 px flowers reach it.
NEAR_THRESHOLD = 0.90
