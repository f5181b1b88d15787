"""Training: typed recipes (config), the LightningModule (task), the frozen-feature cache (features)
and the run directory / Trainer wiring (run). See ARCHITECTURE.md."""
