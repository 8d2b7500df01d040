"""Quality and speed harnesses for memcomp: each writes JSON, a markdown table and, where useful, a plot."""
