"""The fedstrat Flower App (ServerApp + ClientApp) and its run configuration."""
