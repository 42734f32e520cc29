"""Reports: results over seeds, Welch statistics, plots, the chosen proportion, TensorBoard records."""
