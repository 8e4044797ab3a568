"""fedstrat: federated learning with stratified client selection, built on Flower."""

__version__ = "0.1.0"
