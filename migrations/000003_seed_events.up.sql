-- A few events in three cities, with embeddings that cluster by theme:
-- music near (0.9, 0.1, 0.1), tech near (0.1, 0.9, 0.2), food near (0.2, 0.2, 0.9).
INSERT INTO events (name, starts_at, location, embedding) VALUES
    ('Harbour Jazz Night',         '2027-06-12 19:30:00+00', ST_SetSRID(ST_MakePoint(9.9665, 53.5461), 4326)::geography, '[0.9,0.1,0.1]'),
    ('Altona Jazz Brunch',         '2027-06-13 10:00:00+00', ST_SetSRID(ST_MakePoint(9.9352, 53.5503), 4326)::geography, '[0.85,0.15,0.12]'),
    ('Fish Market Breakfast',      '2027-06-14 06:00:00+00', ST_SetSRID(ST_MakePoint(9.9500, 53.5453), 4326)::geography, '[0.2,0.15,0.9]'),
    ('Open Source Hack Day',       '2027-07-03 09:00:00+00', ST_SetSRID(ST_MakePoint(13.4050, 52.5200), 4326)::geography, '[0.1,0.9,0.2]'),
    ('Kreuzberg Database Meetup',  '2027-07-08 18:30:00+00', ST_SetSRID(ST_MakePoint(13.4031, 52.4986), 4326)::geography, '[0.15,0.85,0.3]'),
    ('Viktualienmarkt Food Tour',  '2027-08-20 11:00:00+00', ST_SetSRID(ST_MakePoint(11.5763, 48.1351), 4326)::geography, '[0.25,0.2,0.85]');
