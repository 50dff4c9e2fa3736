"""Loopback emulators of Cliniko, Cal.com and Stripe for the demo clinic, tests and benchmarks."""
