"""Typed application state, kept in one module."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from cnr_oci.auth import Credentials, TokenCodec
from cnr_oci.embedded import EmbeddedRegistry
from cnr_oci.metrics import Metrics
from cnr_oci.oci import OciClient
from cnr_oci.service import PackageService
from cnr_oci.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
UPSTREAM = web.AppKey("upstream", str)
EMBEDDED = web.AppKey("embedded", EmbeddedRegistry)
SESSION = web.AppKey("session", aiohttp.ClientSession)
OCI = web.AppKey("oci", OciClient)
SERVICE = web.AppKey("service", PackageService)
TOKENS = web.AppKey("tokens", TokenCodec)
SERVICE_CREDENTIALS = web.AppKey("service_credentials", Credentials)
METRICS = web.AppKey("metrics", Metrics)
PUSH_SLOTS = web.AppKey("push_slots", asyncio.Semaphore)
