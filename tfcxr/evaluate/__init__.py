"""Evaluation: Table 1 AUCs with CIs, reconstruction quality, Grad-CAM."""
