"""The video re-ID application built on fastrel: data, model, losses, engine and evaluation."""
