"""The applications: the command line (cli), the interactive chat (chat), the main-job demo (demo)."""
