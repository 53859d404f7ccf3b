"""The one family of errors a user can cause; each message says what to do about it."""


class BusiError(Exception):
    """A problem with the user's input (file, folder, parameter) rather than a bug."""


class ImageError(BusiError):
    """An image file or upload that cannot be used as a scan or mask."""


class DatasetError(BusiError):
    """A folder that cannot be read as a BUSI-style dataset."""


class ParameterError(BusiError, ValueError):
    """A processing or configuration parameter outside its allowed values."""
