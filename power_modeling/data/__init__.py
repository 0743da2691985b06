"""Models shipped with the package (skops files, see power_modeling.model_store); no code."""
