"""One model a file; importing this package registers every model."""

from fedstrat.models.zoo import (  # noqa: F401
    cnn,
    cnn_cifar,
    dcnv2,
    deepfm,
    digits_cnn,
    finalmlp,
    fm,
    lr,
    mlp,
)
