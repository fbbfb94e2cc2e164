"""Export: TF Serving SavedModels."""
