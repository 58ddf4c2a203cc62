-- Remove exactly the seeded rows; events created through the API stay.
DELETE FROM events
WHERE (name, starts_at) IN (
    ('Harbour Jazz Night',        '2027-06-12 19:30:00+00'::timestamptz),
    ('Altona Jazz Brunch',        '2027-06-13 10:00:00+00'::timestamptz),
    ('Fish Market Breakfast',     '2027-06-14 06:00:00+00'::timestamptz),
    ('Open Source Hack Day',      '2027-07-03 09:00:00+00'::timestamptz),
    ('Kreuzberg Database Meetup', '2027-07-08 18:30:00+00'::timestamptz),
    ('Viktualienmarkt Food Tour', '2027-08-20 11:00:00+00'::timestamptz)
);
