"""pytorch-app: Flower's quickstart-pytorch shape (CNN, DataLoader) on offline digits."""
