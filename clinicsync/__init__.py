"""ClinicSync: one-way sync of Cliniko and Cal.com into Stripe."""

__version__ = "0.1.0"
