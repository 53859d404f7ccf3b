"""busi: breast-ultrasound tumour classification on BUSI-style data. No UI code lives here."""

__version__ = "0.1.0"
