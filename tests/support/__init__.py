"""Helpers shared by the test suites (servers, extra Ray nodes); no tests here."""
