"""The test fixture writers now live in datasets/fixtures.py (each data set's registry entry
names its writer); this module re-exports them so `from fixtures import ...` keeps working."""
from datasets.fixtures import (CIFAR10_CLASSES, write_cifar10, write_cifar100,  # noqa: F401
                               write_fashion_mnist, write_mnist, write_mnist_like, write_svhn)
