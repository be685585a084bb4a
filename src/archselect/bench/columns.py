"""The columns of the bench tables: metrics per cell, the keys of a method, the column that picks the best seed."""
ACCURACY = ("cifar10_valid", "cifar10_test", "cifar100_test", "imagenet16_valid", "imagenet16_test")
RETRAIN = ("retrain_acc",)
COST = ("search_seconds", "select_seconds", "select_forward", "select_backward")
DIAGNOSTIC = ("param_free_ops", "tied_edges", "kendall_tau", "spearman", "hessian_eig")
METRICS = (*ACCURACY, *RETRAIN, *COST, *DIAGNOSTIC)
KEYS = ("space", "optimizer", "split", "selector")
BEST_BY = "cifar10_valid"
