"""sklearn-app: Flower's quickstart-sklearn shape on offline digits; the ClientApp is unmodified."""
