"""The declared streams, one module each; the engine runs whichever are enabled, in dependency order."""

from __future__ import annotations

from clinicsync.streams.base import (
    PlanRequest,
    Record,
    Stream,
    StreamNotReady,
    StreamSettings,
    WriteStep,
    dependency_order,
)
from clinicsync.streams.calcom_booking_payments import CALCOM_BOOKING_PAYMENTS
from clinicsync.streams.calcom_bookings import CALCOM_BOOKINGS
from clinicsync.streams.calcom_event_types import CALCOM_EVENT_TYPES
from clinicsync.streams.calcom_reference import CALCOM_REFERENCE
from clinicsync.streams.cliniko_invoice_mirror import CLINIKO_INVOICE_MIRROR
from clinicsync.streams.cliniko_invoices import CLINIKO_INVOICES
from clinicsync.streams.cliniko_patients import CLINIKO_PATIENTS
from clinicsync.streams.cliniko_products import CLINIKO_PRODUCTS

STREAMS: dict[str, Stream] = {
    stream.name: stream
    for stream in (
        CLINIKO_PATIENTS,
        CLINIKO_PRODUCTS,
        CLINIKO_INVOICES,
        CLINIKO_INVOICE_MIRROR,
        CALCOM_EVENT_TYPES,
        CALCOM_BOOKINGS,
        CALCOM_BOOKING_PAYMENTS,
        CALCOM_REFERENCE,
    )
}

__all__ = [
    "CALCOM_BOOKINGS",
    "CALCOM_BOOKING_PAYMENTS",
    "CALCOM_EVENT_TYPES",
    "CALCOM_REFERENCE",
    "CLINIKO_INVOICES",
    "CLINIKO_INVOICE_MIRROR",
    "CLINIKO_PATIENTS",
    "CLINIKO_PRODUCTS",
    "STREAMS",
    "PlanRequest",
    "Record",
    "Stream",
    "StreamNotReady",
    "StreamSettings",
    "WriteStep",
    "dependency_order",
]
