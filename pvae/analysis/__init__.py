"""What is computed from a trained model: evaluation (log p(x), ELBO terms, k-hat, active units),
reports and figures, applications (anomaly scores, denoising, inpainting), samplers and
disentanglement."""
