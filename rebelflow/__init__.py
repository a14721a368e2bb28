"""rebelflow: iterative RLHF with REBEL and REFUEL as Prefect flows."""

__version__ = "0.1.0"
