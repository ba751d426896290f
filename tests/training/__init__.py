"""Fine-tuning harness tests: tiny models and task folders come from conftest.py."""
