"""digits-app: a small Flower App (numpy softmax regression on sklearn digits)."""
