"""Inference on raw videos (`egoattn predict`) and deployable exports (`egoattn export`)."""
