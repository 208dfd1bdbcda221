"""The simulation core: devices, crossbars, evaluation, worst-case search and hardening."""
