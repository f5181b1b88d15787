"""egoattn: spatio-temporal attention action recognition for egocentric video."""

__version__ = "0.1.0"
