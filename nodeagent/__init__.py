"""nodeagent: the cluster program of one host (DESIGN.md section 4)."""
