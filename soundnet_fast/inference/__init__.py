"""Using trained weights: ``extract`` (features as .npy), ``predict`` (top classes), ``convert`` (weight files)."""
