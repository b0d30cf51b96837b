"""The Hub: publishing models and datasets (checked folders, one commit), model cards, parameter counts."""
