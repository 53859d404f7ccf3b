"""busi: breast-ultrasound tumour classification on BUSI-style data. No UI code lives here."""

__version__ = "0.2.0"

# One wording wherever a prediction is shown: the command line, the app, reports.
NOTICE = ("Research demo, not a medical device: its predictions and heatmaps must never be used for diagnosis or to "
          "guide patient care.")
