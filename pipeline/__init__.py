"""BinaryClassifier pipeline: prepare, train, evaluate and register a logistic regression."""
