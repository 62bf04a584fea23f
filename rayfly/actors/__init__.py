"""Ray actors of rayfly: the cluster's scheduler and one peer per node."""
