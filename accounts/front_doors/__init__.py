"""The front doors every domain's pages come in through: ``console`` (staff sign-in, access, the
console blueprint factory, pagination) and ``h5`` (subscribers on H5 pages: OAuth snsapi_base and
the per-appid H5 session)."""
