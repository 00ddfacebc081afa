"""Classification: the classifier task (`ClassificationTask`) and loading a trained classifier."""
