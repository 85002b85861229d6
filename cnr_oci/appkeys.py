"""Typed application and request state, kept in one module."""

from __future__ import annotations

import asyncio

from aiohttp import web

from cnr_oci.auth import Credentials, TokenCodec
from cnr_oci.metrics import Metrics
from cnr_oci.oci import OciClient
from cnr_oci.settings import Settings
from cnr_oci.store import Store

SETTINGS = web.AppKey("settings", Settings)
UPSTREAM = web.AppKey("upstream", str)
OCI = web.AppKey("oci", OciClient)
STORE = web.AppKey("store", Store)
TOKENS = web.AppKey("tokens", TokenCodec)
SERVICE_CREDENTIALS = web.AppKey("service_credentials", Credentials)
METRICS = web.AppKey("metrics", Metrics)
PUSH_SLOTS = web.AppKey("push_slots", asyncio.Semaphore)
# Set once a response's headers are sent: an error then aborts the connection instead.
STREAMING = web.RequestKey("streaming", bool)
