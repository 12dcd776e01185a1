"""Ray Tune + Optuna + ASHA hyperparameter search around timesclip.train.fit."""
