"""Checkpoint -> features -> SVM: ``datasets`` (ESC-50/10, DCASE 2013 layouts), ``features`` (cached per-layer
features), ``protocols`` (folds, linear SVM), ``report`` (tables and plots), ``evaluate`` (the command)."""
