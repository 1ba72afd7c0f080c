"""kubectl-qvq: operate a qvq-serving RayService on Kubernetes (the kubectl plugin)."""
