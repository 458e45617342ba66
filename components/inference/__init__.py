"""Using a trained classifier: inputs, batch prediction, ONNX export with a parity check,
the prediction endpoint's model holder, drift monitoring and the model card."""
