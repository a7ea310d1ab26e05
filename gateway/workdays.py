"""Chinese working days (statutory holidays and make-up workdays) for rating windows and follow-up deadlines."""
from __future__ import annotations

import datetime as dt
import functools

import chinese_calendar

CHINA = dt.timezone(dt.timedelta(hours=8))


class CalendarMissing(LookupError):
    """The calendar has no data for a year; the message says which and how to fix it."""


class WorkCalendar:
    """chinese-calendar's data, plus years and days a hall declares before the package knows them."""

    def __init__(self, extra_years=(), holidays=(), workdays=()):
        self.extra_years = set(int(y) for y in extra_years)
        self.holidays = {dt.date.fromisoformat(str(d)) for d in holidays}
        self.workdays = {dt.date.fromisoformat(str(d)) for d in workdays}

    def is_workday(self, day: dt.date) -> bool:
        if day in self.workdays:
            return True
        if day in self.holidays:
            return False
        try:
            return chinese_calendar.is_workday(day)
        except NotImplementedError:
            if day.year in self.extra_years:
                return day.weekday() < 5
            raise CalendarMissing(
                f"no holiday data for {day.year}: upgrade chinese-calendar, or list {day.year} in "
                f"calendar.extra_years with its holidays and workdays") from None

    def add_workdays(self, start: dt.date, count: int) -> dt.date:
        """The `count`-th working day after `start` (start itself not counted)."""
        day = start
        while count > 0:
            day += dt.timedelta(days=1)
            if self.is_workday(day):
                count -= 1
        return day

    def deadline(self, start_epoch: float, workdays: int) -> float:
        """End (China time) of the `workdays`-th working day after the day of `start_epoch`, as Unix seconds."""
        return self._deadline(china_day(start_epoch), workdays)

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - calendars live as long as the gateway; days repeat
    def _deadline(self, start: dt.date, workdays: int) -> float:
        return day_end(self.add_workdays(start, workdays))


def china_day(epoch: float) -> dt.date:
    """The China date of a moment."""
    return dt.datetime.fromtimestamp(epoch, CHINA).date()


def day_end(day: dt.date) -> float:
    """The end of a China date (the next one's midnight), as Unix seconds."""
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), CHINA).timestamp()
