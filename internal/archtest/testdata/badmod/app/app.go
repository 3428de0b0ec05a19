package app

// Name stands for the composition root.
func Name() string { return "app" }
