"""Running on Ray: joining or starting a cluster, the runner of engine jobs and Ray Train worker groups,
the Ray metrics, and how a command ends (logging, one-line errors)."""
