"""pyloto: the back end of a WhatsApp Cloud API assistant, fast, without losing a message."""

__version__ = "0.1.0"
